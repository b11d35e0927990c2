"""bpr as an HTTP service: FastAPI + uvicorn on top of :class:`bpr.Refiner`.

    from service.app import create_app
    app = create_app(Settings(checkpoint="model.pt"))   # or run `bpr-serve`

Layout: ``app.py`` wires everything; ``routers/`` one file per concern; ``engine.py`` puts
the Refiner's stages on threads; ``batching.py`` pools patches of concurrent requests into
network batches; ``inputs.py`` turns uploads into arrays; ``detectors/`` the upstream
detectors for /segment; ``settings.py`` every ``BPR_*`` variable.
"""
