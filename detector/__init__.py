"""Face detection (SCRFD through insightface) and 5-point alignment: the detect and align stages."""
