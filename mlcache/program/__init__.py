"""What `pulumi up` sends: typed settings, the names shared with the read side, the stack
outputs and the components."""
