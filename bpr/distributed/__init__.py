"""Refinement across machines: shard planning and the work dir (no cluster code) in
:mod:`bpr.distributed.shards`, the Ray Data engine in :mod:`bpr.distributed.ray_engine`
(needs the ``ray`` extra, ``pip install '.[ray]'`` in a checkout; imported only when that engine is asked for)."""
