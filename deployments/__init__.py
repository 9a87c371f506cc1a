"""pdserve.deployments"""
