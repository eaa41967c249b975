"""`glimp bench` and `glimp calibrate`: the paper's comparison on any model pair, with error bars."""
