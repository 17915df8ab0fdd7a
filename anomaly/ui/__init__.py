"""The Gradio review app: layout in ``app``, plain-function callbacks in ``callbacks``."""
