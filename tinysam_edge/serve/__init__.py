"""``tinysam-edge serve``: the HTTP API and browser UI (FastAPI + uvicorn; the ``[serve]`` extra).

``app.create_app`` builds the app; ``engine`` runs inference jobs on a pool of predictors behind a
bounded queue; ``state`` keeps image snapshots in an LRU; ``uploads`` and ``schema`` check what clients send.
"""
