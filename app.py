"""Gradio entry point (thin): `python app.py` or `make run`."""

from anomaly.ui.app import build_app, launch  # noqa: F401

if __name__ == "__main__":
    launch()
