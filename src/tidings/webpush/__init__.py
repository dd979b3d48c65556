"""tidings.webpush"""
