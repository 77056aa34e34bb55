"""Dockerfile rendering and image builds through the docker SDK."""
