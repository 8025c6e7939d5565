// Command tspload registers simulated nodes with a Tailscale control server using Tailscale's
// own protocol client (tailscale.com/control/tsp over control/ts2021: the Noise handshake, HTTP/2
// and the register request as tailscaled makes them). It is the benchmarks' load generator where
// the load generator's own CPU would otherwise be what is measured: the Python fleet
// (benchmarks/map_fanout.py) spends about as much CPU on a registration as the server does.
//
//	tspload register -server http://127.0.0.1:PORT -authkey KEY -n 2000 -concurrency 64
//
// It prints one JSON object: how many registered, how long it took from the first start to the
// last answer, the rate, and its own CPU (user + system), so that a run can say whose CPU it was.
//
//	tspload fleet -server URL [-server URL2] -authkey KEY -n 10000 -concurrency 64
//
// N nodes register (alternating servers) and hold streaming map requests, as a joining tailnet
// does; see fleet.go for the lines it prints and the commands it reads.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

type result struct {
	Count        int     `json:"count"`
	Errors       int     `json:"errors"`
	FirstError   string  `json:"first_error,omitempty"`
	Concurrency  int     `json:"concurrency"`
	TookS        float64 `json:"took_s"`
	RegisterPerS float64 `json:"register_per_s"`
	P50Ms        float64 `json:"p50_ms"`
	P99Ms        float64 `json:"p99_ms"`
	CPUS         float64 `json:"client_cpu_s"`
	CPUPerRegMs  float64 `json:"client_cpu_per_join_ms"`
	Client       string  `json:"client"`
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "fleet" {
		fleetMain(os.Args[2:])
		return
	}
	if len(os.Args) < 2 || os.Args[1] != "register" {
		fmt.Fprintln(os.Stderr, "usage: tspload register -server URL -authkey KEY [-n N] [-concurrency C] [-prefix NAME]\n"+
			"       tspload fleet -server URL [-server URL ...] -authkey KEY [-n N] [-concurrency C]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("register", flag.ExitOnError)
	server := fs.String("server", "", "the control server's URL (http://host:port)")
	authKey := fs.String("authkey", "", "a reusable pre-auth key")
	n := fs.Int("n", 1000, "how many nodes register")
	concurrency := fs.Int("concurrency", 64, "nodes registering at once")
	prefix := fs.String("prefix", "tsp", "host names are PREFIX0, PREFIX1, ...")
	timeout := fs.Duration("timeout", 120*time.Second, "how long one registration may take")
	fs.Parse(os.Args[2:])
	if *server == "" || *authKey == "" || *n < 1 || *concurrency < 1 {
		fmt.Fprintln(os.Stderr, "tspload: -server and -authkey are required, -n and -concurrency must be positive")
		os.Exit(2)
	}

	ctx := context.Background()
	serverKey, err := tsp.DiscoverServerKey(ctx, *server)
	if err != nil {
		fmt.Fprintf(os.Stderr, "tspload: %v\n", err)
		os.Exit(1)
	}
	// keys are made before the clock starts: a real node has its keys before it registers
	machineKeys := make([]key.MachinePrivate, *n)
	nodeKeys := make([]key.NodePrivate, *n)
	for i := range machineKeys {
		machineKeys[i] = key.NewMachine()
		nodeKeys[i] = key.NewNode()
	}

	var (
		mu       sync.Mutex
		errs     int
		firstErr string
		took     = make([]time.Duration, 0, *n)
	)
	register := func(i int) {
		started := time.Now()
		err := func() error {
			c, err := tsp.NewClient(tsp.ClientOpts{ServerURL: *server, MachineKey: machineKeys[i]})
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetControlPublicKey(serverKey)
			rctx, cancel := context.WithTimeout(ctx, *timeout)
			defer cancel()
			resp, err := c.Register(rctx, tsp.RegisterOpts{
				NodeKey:  nodeKeys[i],
				AuthKey:  *authKey,
				Hostinfo: &tailcfg.Hostinfo{Hostname: fmt.Sprintf("%s%d", *prefix, i)},
			})
			if err != nil {
				return err
			}
			if !resp.MachineAuthorized {
				return fmt.Errorf("node %d registered but not authorized", i)
			}
			return nil
		}()
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs++
			if firstErr == "" {
				firstErr = err.Error()
			}
			return
		}
		took = append(took, time.Since(started))
	}

	cpu0 := cpuSeconds()
	t0 := time.Now()
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				register(i)
			}
		}()
	}
	for i := 0; i < *n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(t0).Seconds()
	cpu := cpuSeconds() - cpu0

	sort.Slice(took, func(a, b int) bool { return took[a] < took[b] })
	pct := func(p float64) float64 {
		if len(took) == 0 {
			return 0
		}
		return float64(took[int(p*float64(len(took)-1))].Microseconds()) / 1000
	}
	ok := len(took)
	res := result{
		Count: ok, Errors: errs, FirstError: firstErr, Concurrency: *concurrency,
		TookS: round(elapsed, 2), RegisterPerS: round(float64(ok)/elapsed, 1),
		P50Ms: pct(0.5), P99Ms: pct(0.99), CPUS: round(cpu, 2),
		CPUPerRegMs: round(1000*cpu/float64(max(ok, 1)), 2),
		Client:      "tailscale.com/control/tsp " + tailscaleVersion(),
	}
	json.NewEncoder(os.Stdout).Encode(res)
	if errs > 0 {
		os.Exit(1)
	}
}

func round(x float64, digits int) float64 {
	p := 1.0
	for i := 0; i < digits; i++ {
		p *= 10
	}
	return float64(int64(x*p+0.5)) / p
}
