"""Body models: SMPL through smplx, the embedded open model, joint conventions, joints-only forward."""
