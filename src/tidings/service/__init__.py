"""tidings.service"""
