"""Student and teacher builders for kd-keras."""
