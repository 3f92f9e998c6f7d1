"""The toy experiment's scan: 4 points (Width x Depth), 3 epochs each."""

Config = {"Epochs": 3, "EpochTime": 0.0}
Params = {"Width": [1, 2], "Depth": [1, 2]}
