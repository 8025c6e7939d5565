package main

// The fleet: N nodes joined and holding their map streams, driven over stdin/stdout by a Python
// benchmark (benchmarks/map_fanout.py, TspFleet), which moves a node of its own and asks when the
// fleet has seen the change.
//
// Lines out (JSON): {"event":"joined",...} once every node has its first map; {"event":"quiet",...}
// once no node has had anything but keepalives for -quiet; {"event":"armed"} after each
// `expect TOKEN` line in; {"event":"seen",...} when every node has had a message containing
// TOKEN (or -wait passed), with each node's CLOCK_MONOTONIC time of it (Python's time.monotonic
// clock), 0 for none; {"event":"done",...} after `quit` (or end of input), once every stream is
// closed.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
	"tailscale.com/control/ts2021"
	"tailscale.com/control/tsp"
	"tailscale.com/net/tsdial"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

type serverList []string

func (s *serverList) String() string     { return strings.Join(*s, ",") }
func (s *serverList) Set(v string) error { *s = append(*s, v); return nil }

// monotonic is CLOCK_MONOTONIC in seconds: the clock Python's time.monotonic reads, so the two
// processes' times can be subtracted.
func monotonic() float64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

// expectation is one round: the token a moved node's change carries, and when each node saw it.
type expectation struct {
	token     []byte
	seenAt    []atomic.Uint64 // float64 bits; 0 until seen
	remaining atomic.Int64
	all       chan struct{}
}

type fleet struct {
	ctx       context.Context
	authKey   string
	prefix    string
	keys      map[string]key.MachinePublic
	decoder   *zstd.Decoder // DecodeAll is safe for concurrent use
	expect    atomic.Pointer[expectation]
	lastNews  atomic.Uint64 // float64 bits: monotonic time of the last message that was not a keepalive
	rxBytes   atomic.Int64
	retries   atomic.Int64
	cuts      atomic.Int64
	firstMaps sync.WaitGroup
	streams   sync.WaitGroup
	ready     chan struct{} // a token per node dialing and registering
}

type simNode struct {
	index    int
	server   string
	machine  key.MachinePrivate
	node     key.NodePrivate
	disco    key.DiscoPublic
	gotFirst atomic.Bool // only its own goroutine writes it
}

var keepAliveJSON = []byte(`{"KeepAlive":true}`)

func (f *fleet) isKeepAlive(msg []byte) bool {
	if len(msg) >= 64 {
		return false
	}
	out, err := f.decoder.DecodeAll(msg, nil)
	return err == nil && bytes.Equal(bytes.TrimSpace(out), keepAliveJSON)
}

func (f *fleet) noiseClient(n *simNode) (*ts2021.Client, error) {
	return ts2021.NewClient(ts2021.ClientOpts{
		ServerURL:    n.server,
		PrivKey:      n.machine,
		ServerPubKey: f.keys[n.server],
		Dialer:       tsdial.NewFromFuncForDebug(logger.Discard, (&net.Dialer{}).DialContext),
		Logf:         logger.Discard,
	})
}

func readAll(body io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(body, 300))
	return strings.TrimSpace(string(b))
}

// join registers the node (unless done before) and opens its map stream; it returns the stream
// once the request is answered, holding a ready token only while dialing and registering.
func (f *fleet) join(n *simNode, register bool) (*ts2021.Client, io.ReadCloser, error) {
	f.ready <- struct{}{}
	released := false
	release := func() {
		if !released {
			released = true
			<-f.ready
		}
	}
	defer release()
	nc, err := f.noiseClient(n)
	if err != nil {
		return nil, nil, err
	}
	if register {
		res, err := nc.Post(f.ctx, "/machine/register", n.node.Public(), tailcfg.RegisterRequest{
			Version:  tailcfg.CurrentCapabilityVersion,
			NodeKey:  n.node.Public(),
			Hostinfo: &tailcfg.Hostinfo{Hostname: fmt.Sprintf("%s%d", f.prefix, n.index)},
			Auth:     &tailcfg.RegisterResponseAuth{AuthKey: f.authKey},
		})
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
		var resp tailcfg.RegisterResponse
		err = json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&resp)
		res.Body.Close()
		if err != nil || res.StatusCode != 200 || resp.Error != "" || !resp.MachineAuthorized {
			nc.Close()
			return nil, nil, fmt.Errorf("register: status %d, error %q, authorized %v, %v",
				res.StatusCode, resp.Error, resp.MachineAuthorized, err)
		}
	}
	release()
	res, err := nc.Post(f.ctx, "/machine/map", n.node.Public(), tailcfg.MapRequest{
		Version:   tailcfg.CurrentCapabilityVersion,
		NodeKey:   n.node.Public(),
		DiscoKey:  n.disco,
		Stream:    true,
		Compress:  "zstd",
		KeepAlive: true,
		Hostinfo:  &tailcfg.Hostinfo{Hostname: fmt.Sprintf("%s%d", f.prefix, n.index)},
	})
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	if res.StatusCode != 200 {
		msg := readAll(res.Body)
		res.Body.Close()
		nc.Close()
		return nil, nil, fmt.Errorf("map: status %d: %s", res.StatusCode, msg)
	}
	return nc, res.Body, nil
}

// run keeps the node joined until the fleet's context ends; a stream lost before the first map
// is tried again (counted as a retry), and one lost after it is reopened (a cut), as a client
// would.
func (f *fleet) run(n *simNode) {
	defer f.streams.Done()
	registered := false
	for attempt := 0; f.ctx.Err() == nil; attempt++ {
		nc, body, err := f.join(n, !registered)
		if err == nil {
			registered = true
			err = f.read(n, body)
			body.Close()
			nc.Close()
		}
		if f.ctx.Err() != nil {
			return
		}
		if attempt == 20 {
			fmt.Fprintf(os.Stderr, "node %d: giving up: %v\n", n.index, err)
			os.Exit(1)
		}
		if n.gotFirst.Load() {
			f.cuts.Add(1)
		} else {
			f.retries.Add(1)
		}
		fmt.Fprintf(os.Stderr, "node %d: %v; trying again\n", n.index, err)
		time.Sleep(100 * time.Millisecond)
	}
}

// read takes the map stream's messages (a little-endian length, then a zstd frame), searching
// them only while a round waits for a token this node has not seen.
func (f *fleet) read(n *simNode, body io.Reader) error {
	r := bufio.NewReaderSize(body, 16<<10)
	var hdr [4]byte
	small := make([]byte, 0, 4096)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		size := int(binary.LittleEndian.Uint32(hdr[:]))
		if size > 64<<20 {
			return errors.New("message too large")
		}
		f.rxBytes.Add(int64(size) + 4)
		e := f.expect.Load()
		want := e != nil && e.seenAt[n.index].Load() == 0
		var msg []byte
		if want || size < 64 {
			if size <= cap(small) {
				msg = small[:size]
			} else {
				msg = make([]byte, size)
			}
			if _, err := io.ReadFull(r, msg); err != nil {
				return err
			}
		} else if _, err := r.Discard(size); err != nil {
			return err
		}
		now := monotonic()
		if !n.gotFirst.Load() {
			n.gotFirst.Store(true)
			f.firstMaps.Done()
		}
		if msg != nil && f.isKeepAlive(msg) {
			continue
		}
		f.lastNews.Store(floatBits(now))
		if want {
			out, err := f.decoder.DecodeAll(msg, nil)
			if err == nil && bytes.Contains(out, e.token) && e.seenAt[n.index].CompareAndSwap(0, floatBits(now)) {
				if e.remaining.Add(-1) == 0 {
					close(e.all)
				}
			}
		}
	}
}

func floatBits(x float64) uint64 { return math.Float64bits(x) }

func emit(v map[string]any) {
	b, _ := json.Marshal(v)
	os.Stdout.Write(append(b, '\n'))
}

func fleetMain(args []string) {
	fs := flag.NewFlagSet("fleet", flag.ExitOnError)
	var servers serverList
	fs.Var(&servers, "server", "a control server's URL (http://host:port); repeat to alternate nodes over several")
	authKey := fs.String("authkey", "", "a reusable pre-auth key")
	n := fs.Int("n", 100, "how many nodes join")
	prefix := fs.String("prefix", "tsp", "host names are PREFIX0, PREFIX1, ...")
	concurrency := fs.Int("concurrency", 64, "nodes dialing and registering at once")
	quiet := fs.Duration("quiet", 3*time.Second, "quiet: no node got anything but keepalives for this long")
	quietLimit := fs.Duration("quiet-limit", 5*time.Minute, "stop waiting for quiet after this long")
	wait := fs.Duration("wait", 60*time.Second, "how long a round waits for every node to see its token")
	fs.Parse(args)
	if len(servers) == 0 || *authKey == "" || *n < 1 || *concurrency < 1 {
		fmt.Fprintln(os.Stderr, "tspload fleet: -server and -authkey are required, -n and -concurrency must be positive")
		os.Exit(2)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(256<<20))
	if err != nil {
		fmt.Fprintln(os.Stderr, "tspload:", err)
		os.Exit(1)
	}
	f := &fleet{ctx: ctx, authKey: *authKey, prefix: *prefix, keys: map[string]key.MachinePublic{}, decoder: dec,
		ready: make(chan struct{}, *concurrency)}
	for _, s := range servers {
		if _, err := url.Parse(s); err != nil {
			fmt.Fprintln(os.Stderr, "tspload:", err)
			os.Exit(2)
		}
		k, err := tsp.DiscoverServerKey(ctx, s)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tspload:", err)
			os.Exit(1)
		}
		f.keys[s] = k
	}
	nodes := make([]*simNode, *n)
	for i := range nodes {
		nodes[i] = &simNode{index: i, server: servers[i%len(servers)], machine: key.NewMachine(),
			node: key.NewNode(), disco: key.NewDisco().Public()}
	}

	cpu0, t0 := cpuSeconds(), monotonic()
	f.lastNews.Store(floatBits(t0))
	f.firstMaps.Add(len(nodes))
	for _, node := range nodes {
		f.streams.Add(1)
		go f.run(node)
	}
	f.firstMaps.Wait()
	joined := monotonic()
	emit(map[string]any{"event": "joined", "setup_s": joined - t0, "retries": f.retries.Load(),
		"client_cpu_s": cpuSeconds() - cpu0, "rx_bytes": f.rxBytes.Load()})
	for monotonic()-joined < quietLimit.Seconds() {
		time.Sleep(250 * time.Millisecond)
		if monotonic()-math.Float64frombits(f.lastNews.Load()) > quiet.Seconds() {
			break
		}
	}
	emit(map[string]any{"event": "quiet", "drain_s": monotonic() - joined, "rx_bytes": f.rxBytes.Load(),
		"client_cpu_s": cpuSeconds() - cpu0, "cuts": f.cuts.Load()})

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		if token, ok := strings.CutPrefix(line, "expect "); ok {
			e := &expectation{token: []byte(token), seenAt: make([]atomic.Uint64, len(nodes)), all: make(chan struct{})}
			e.remaining.Store(int64(len(nodes)))
			f.expect.Store(e)
			emit(map[string]any{"event": "armed", "token": token})
			select {
			case <-e.all:
			case <-time.After(*wait):
			}
			f.expect.Store(nil)
			times := make([]float64, len(nodes))
			for i := range times {
				times[i] = math.Float64frombits(e.seenAt[i].Load())
			}
			emit(map[string]any{"event": "seen", "token": token, "times": times, "cuts": f.cuts.Load(),
				"client_cpu_s": cpuSeconds() - cpu0})
		} else if line == "quit" {
			break
		} else if line != "" {
			emit(map[string]any{"event": "error", "error": "unknown command: " + line})
		}
	}
	cpu := cpuSeconds() - cpu0
	cancel()
	f.streams.Wait()
	emit(map[string]any{"event": "done", "client_cpu_s": cpu, "rx_bytes": f.rxBytes.Load(), "cuts": f.cuts.Load()})
}
