package main

import "runtime/debug"

// tailscaleVersion is the tailscale.com module this binary was built with (from go.mod).
func tailscaleVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "tailscale.com" {
				return dep.Version
			}
		}
	}
	return "unknown"
}
