"""tidings.hyperty"""
