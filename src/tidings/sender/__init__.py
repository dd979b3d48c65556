"""tidings.sender"""
