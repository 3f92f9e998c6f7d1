"""``dlkit.export.export``: one call for either format."""

from __future__ import annotations

__all__ = ["export"]


def export(run_dir, format: str = "onnx", out=None, **options):
    """``format="onnx"``: :func:`dlkit.export.export_onnx` (returns the path); ``"hls4ml"``:
    :func:`dlkit.export.export_hls4ml` (returns the :class:`~dlkit.export.HLSExport`)."""
    if format == "onnx":
        from dlkit.export.onnx_export import export_onnx

        return export_onnx(run_dir, out, **options)
    if format == "hls4ml":
        from dlkit.export.hls import export_hls4ml

        return export_hls4ml(run_dir, out, **options)
    from dlkit.export.run import ExportError

    raise ExportError(f"format {format!r}: expected 'onnx' or 'hls4ml'")
