# The session's run loop, compiled, ``include``d into _kernels.pyx.
#
# Design: runtime/planner.py's Executor runs a plan's steps in order over a flat list of slots.
# Per step the loop gathers the input slots, calls the step's fast path, stores its outputs and
# frees the slots read for the last time: about 2 us of interpreted bookkeeping a step, a tenth of
# a small CNN's batch-1 run. This is the same loop compiled (the same Python objects, the same
# order of effects); the checked way -- size checks, the reference op, errors named with their
# node -- stays in the planner and is passed in as ``checked(step, env[, declined])``.

def arg_shapes(args):
    """The shapes of a step's inputs (None for a missing one): the key under which a step keeps
    the last input shapes that passed its size check (runtime/planner.py)."""
    return tuple([None if a is None else a.shape for a in args])


def run_steps(list env, steps, checked):
    """Run ``steps`` (planner Step objects) over the slots ``env`` in place. A step whose fast
    path is set and whose output size needs no check (or whose input shapes match the last ones
    that passed it) runs its fast path here; one that declines (returns None) or raises goes
    through ``checked(step, env, declined)``, and a step without a fast path, or with a size to
    check, through ``checked(step, env)``. Outputs that are not arrays become arrays."""
    cdef object step, fn, outs, val
    cdef list args
    cdef tuple ins, souts
    cdef Py_ssize_t j, n, i, o
    cdef bint declined, run
    for step in steps:
        fn = step.fn
        outs = None
        if fn is not None:
            ins = step.ins
            n = len(ins)
            args = [None] * n
            for j in range(n):
                i = ins[j]
                if i >= 0:
                    args[j] = env[i]
            run = not step.sized
            if not run and step.checked is not None:
                run = arg_shapes(args) == step.checked
            if run:
                try:
                    outs = fn(args, step.node.attrs, len(step.outs))
                    declined = outs is None
                except Exception:
                    declined = False    # run it again the checked way, for the named error
                if outs is None:
                    outs = checked(step, env, declined)
        if outs is None:
            outs = checked(step, env)
        souts = step.outs
        n = min(len(souts), len(outs))
        for j in range(n):
            o = souts[j]
            if o >= 0:
                val = outs[j]
                env[o] = val if type(val) is _NDARRAY else np.asarray(val)
        for val in step.free:
            env[val] = None
