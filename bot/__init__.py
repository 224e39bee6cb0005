"""Haoqing's runtime: configuration, storage, dispatch, effects, channels and the web server."""
