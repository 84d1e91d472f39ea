"""Web feature browser: `create_app(run_dir)` (FastAPI) and `serve(run_dir, host, port)`."""
