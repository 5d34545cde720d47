"""The guest's view of a VMBus device (layer 4): sysfs scan, uio maps, rings, channels, signalling."""
