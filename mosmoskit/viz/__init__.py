"""mosmoskit.viz"""
