"""qinfer inside other frameworks.

- ``qinfer.integrations.ray``: batch inference on Ray Data (``pip install 'qinfer[ray]'``): a callable
  class for ``ray.data.Dataset.map_batches`` and ``predict(dataset, model_path)``.
- ``qinfer.integrations.batch``: the ``qinfer batch`` command (a directory of ``.npy`` / ``.npz`` /
  ``.parquet`` files in, one ``.npz`` of outputs per input shard out), on a local thread pool or on Ray.

Nothing here is imported by ``import qinfer``, and Ray is imported only when a Ray run starts.
"""
