"""The contract shared by training and the service: bundles, signing, preprocessing,
the predictor and the model store. Depends on nothing in `app` or `training`."""
