"""pdserve.routing"""
