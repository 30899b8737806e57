"""Ray Serve: the app builder, the ingress, the model deployment classes, Ray metrics.

The only package that imports Ray, and the only one in ``fusion`` that imports
``deployments`` (to host its backends in replicas).
"""
