"""bpr as an HTTP service: FastAPI + uvicorn on top of :class:`bpr.Refiner`.

    from service.app import create_app
    app = create_app(Settings(checkpoint="model.pt"))   # or run `bpr-serve`

Layout: ``app.py`` wires everything; ``routers/`` one file per concern, each validating a
request and answering it; ``pipeline.py`` takes one request from upload to answer (decode,
detect, refine, encode, each timed), reading uploads with ``inputs.py`` and writing answers
with ``outputs.py``, under the deadline of ``deadline.py``; ``engine.py`` puts the Refiner's
stages on threads; ``batching.py`` pools patches of concurrent requests into network
batches; ``detectors/`` the upstream detectors for /segment; ``settings.py`` every ``BPR_*``
variable.
"""
