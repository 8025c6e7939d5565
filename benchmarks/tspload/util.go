package main

import (
	"context"

	"tailscale.com/control/tsp"
	"tailscale.com/types/key"
)

func discoverKey(ctx context.Context, server string) (key.MachinePublic, error) {
	return tsp.DiscoverServerKey(ctx, server)
}
