"""Rolling agents out in production: shadow runs and earned autonomy."""
