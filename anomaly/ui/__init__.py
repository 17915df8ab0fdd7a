"""The Gradio review app: layout in ``app``, plain-function callbacks in ``callbacks``."""

# Every event that loads a scan into the review view (button, upload, example, a Worklist study) runs
# in this one queue, one load at a time in the order asked, the latest input of a repeated one last.
LOAD_QUEUE = dict(trigger_mode="always_last", concurrency_id="load_scan", concurrency_limit=1)


def refusal_as_message(fn, n_out: int, message_at: int, prefix: str, cleared: dict | None = None):
    """A page event's version of ``fn`` (a callback that raises ``gr.Error`` to refuse): the refusal
    becomes a warning and ``**{prefix}:** message`` in output ``message_at``, the other ``n_out - 1``
    outputs are left as they are, but those in ``cleared`` (index -> value) are set to that value (what
    the refused request would have replaced must not stay on screen as if it were its answer). A raised error would mark every output "Error" until its next
    update (and an image output would swallow the next click). API endpoints keep ``fn`` itself,
    so that ``gradio_client`` callers still get the failure."""
    import gradio as gr

    def run(*args):
        try:
            return fn(*args)
        except gr.Error as e:
            gr.Warning(f"{prefix}: {e.message}".replace("`", ""))  # a toast shows no markdown
            out = [gr.update()] * n_out
            for i, v in (cleared or {}).items():
                out[i] = v
            out[message_at] = f"**{prefix}:** {e.message}"
            return out

    return run
