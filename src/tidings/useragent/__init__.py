"""tidings.useragent"""
