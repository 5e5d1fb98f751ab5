"""mosmoskit.data"""
