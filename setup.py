"""Build of qinfer's compiled part: one extension, qinfer._ext._kernels.

Design: setuptools gives one set of flags per extension, but ISA code must be quarantined by
folder: only kernels/avx2/*.c get the AVX2 flags and only kernels/avx512vnni/*.c the AVX-512 VNNI
flags (never a flag tuned to the build host: the wheel must run on any x86-64, dispatch picks the variant at run
time). So build_ext compiles each ISA folder itself with its own extra_postargs and links the
objects in (extra_objects); the Cython module, cpu.c, dispatch.c and kernels/scalar/ get the
baseline flags. Each ISA's flags and OpenMP are probed with a tiny compile first: a compiler
without them still builds a working (scalar, single-threaded) package, and QI_BUILD_<ISA>
tells dispatch.c which ukernels.inc lines exist.
"""
import glob
import os
import platform
import shutil
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, LinkError

BASE_FLAGS = ["-O3", "-g0", "-fPIC", "-std=gnu11", "-ffp-contract=off", "-fno-strict-aliasing"]
ISA_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512vnni": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mfma"],
}
# a line of each ISA's intrinsics: the probe that the compiler takes the flags
ISA_PROBE = {
    "avx2": "#include <immintrin.h>\n"
            "__m256 f(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }\n",
    "avx512vnni": "#include <immintrin.h>\n"
                  "__m512i f(__m512i a, __m512i b, __m512i c) { return _mm512_dpbusd_epi32(a, b, c); }\n"
                  "__m512 g(__m512 a, __mmask16 m, const float *p) { return _mm512_mask_loadu_ps(a, m, p); }\n",
}
OPENMP_PROBE = ("#include <omp.h>\n"
                "int main(void) { int n = 0;\n#pragma omp parallel reduction(+:n)\n n += 1;\n"
                " return n > 0 ? 0 : 1; }\n")
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")

#: QINFER_SANITIZE=address,undefined (any -fsanitize= list) builds the extension instrumented, for
#: scripts/sanitize.sh: every object (Cython module, baseline and ISA kernels) and the link get the
#: flag, with frame pointers and debug lines for readable reports. Unset: a normal build.
SANITIZE = os.environ.get("QINFER_SANITIZE", "").strip()

KERNEL_DEPENDS = (glob.glob("kernels/include/qinfer/*.h") + glob.glob("kernels/*/*.h")
                  + glob.glob("src/qinfer/_ext/*.pxi")
                  + ["kernels/ukernels.inc", "kernels/stream-u8-body.inc", "src/qinfer/_ext/_kernels.pxd"])


class BuildExt(build_ext):
    """build_ext with per-ISA-folder compile flags and an OpenMP probe."""

    def _probe(self, code, flags, link=False):
        tmp = tempfile.mkdtemp(prefix="qinfer-probe-")
        try:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(code)
            objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            if link:
                self.compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=flags)
            return True
        except (CompileError, LinkError, CCompilerError, OSError):
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def build_extensions(self):
        gnu_like = self.compiler.compiler_type in ("unix", "mingw32", "cygwin")
        base = BASE_FLAGS if gnu_like else []
        sanitize = []
        if SANITIZE:
            if not gnu_like:
                raise SystemExit("QINFER_SANITIZE needs a GCC or Clang build")
            sanitize = [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer"]
            base = [f for f in base if f != "-g0"] + ["-g"] + sanitize
            print(f"qinfer build: sanitizers {SANITIZE}")
        omp = ["-fopenmp"] if gnu_like and self._probe(OPENMP_PROBE, ["-fopenmp"], link=True) else []
        isas = [isa for isa, flags in ISA_FLAGS.items()
                if gnu_like and IS_X86 and self._probe(ISA_PROBE[isa], base + flags)]
        print(f"qinfer build: OpenMP {'yes' if omp else 'no'}; ISA kernels: "
              f"{', '.join(['scalar'] + isas)}")
        for ext in self.extensions:
            macros = [(f"QI_BUILD_{isa.upper()}", "1" if isa in isas else "0") for isa in ISA_FLAGS]
            ext.define_macros = list(ext.define_macros) + macros
            ext.extra_compile_args = list(ext.extra_compile_args) + base + omp
            ext.extra_link_args = list(ext.extra_link_args) + omp + sanitize
            for isa in isas:
                sources = sorted(glob.glob(f"kernels/{isa}/*.c"))
                objects = self._isa_objects(isa, sources, ext, base + ISA_FLAGS[isa])
                ext.extra_objects = list(ext.extra_objects) + objects
                # setuptools dates an extension by its sources and depends only: an ISA object
                # rebuilt after an edit must relink it (else the old kernel stays in the module)
                ext.depends = list(ext.depends) + objects
        super().build_extensions()

    def _isa_objects(self, isa, sources, ext, flags):
        """The objects of one ISA folder, compiled where missing, older than their source or a
        header, or built with other flags or macros (a stamp file per ISA records them)."""
        objects = self.compiler.object_filenames(sources, output_dir=self.build_temp)
        stamp = os.path.join(self.build_temp, f"qinfer-{isa}.flags")
        wanted = repr((flags, sorted(ext.define_macros), ext.include_dirs))
        try:
            with open(stamp) as f:
                same = f.read() == wanted
        except OSError:
            same = False
        newest_header = max((os.path.getmtime(d) for d in KERNEL_DEPENDS if os.path.exists(d)), default=0)

        def stale(src, obj):
            if self.force or not same or not os.path.exists(obj):
                return True
            return os.path.getmtime(obj) < max(os.path.getmtime(src), newest_header)

        todo = [s for s, o in zip(sources, objects) if stale(s, o)]
        if todo:
            self.compiler.compile(todo, output_dir=self.build_temp, macros=ext.define_macros,
                                  include_dirs=ext.include_dirs, extra_postargs=flags)
            os.makedirs(self.build_temp, exist_ok=True)
            with open(stamp, "w") as f:
                f.write(wanted)
        return objects


def extensions():
    from Cython.Build import cythonize

    ext = Extension(
        "qinfer._ext._kernels",
        sources=(["src/qinfer/_ext/_kernels.pyx", "kernels/cpu.c", "kernels/dispatch.c"]
                 + sorted(glob.glob("kernels/scalar/*.c"))),
        include_dirs=["kernels/include", "kernels"],
        libraries=["m"] if os.name == "posix" else [],
        depends=KERNEL_DEPENDS,
    )
    return cythonize([ext], compiler_directives={"language_level": 3}, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
