"""Gradio components the app needs that Gradio lacks."""

from __future__ import annotations

import gradio as gr
import gradio.component_meta as _meta
import numpy as np

# Gradio's component metaclass writes a ``.pyi`` stub beside the module of every new component
# class (for custom-component packages); none is wanted in this package, so that step is skipped
# while the class below is made.
_write_stub = _meta.create_or_modify_pyi
_meta.create_or_modify_pyi = lambda *args, **kwargs: None
try:
    class ClampedSlider(gr.Slider):
        """A slider whose typed number out of range is taken as the nearest end, and one between steps as
        the nearest step: Gradio's own slider refuses the first before any callback runs, with "Error"
        badges on every output of the event, and passes the second on as typed."""

        is_template = True  # drawn by Gradio's slider front end

        def preprocess(self, payload):
            try:
                v = float(payload)
            except (TypeError, ValueError):
                v = float(self.minimum)
            if not np.isfinite(v):
                v = float(self.minimum)
            lo, hi = float(self.minimum), float(self.maximum)
            step = float(self.step or 0)
            if step > 0:  # a typed 45.7 on a slice slider is slice 46, as its handle shows
                v = lo + round((v - lo) / step) * step
            return super().preprocess(min(max(v, lo), hi))
finally:
    _meta.create_or_modify_pyi = _write_stub
