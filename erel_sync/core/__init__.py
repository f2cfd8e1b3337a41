"""PURE: decisions (matching, planning, status, rendering) over model values. No I/O imports."""
