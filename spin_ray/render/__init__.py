"""Headless mesh rendering with moderngl over EGL."""
