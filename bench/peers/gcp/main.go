// Command gcp is a minimal ADS server on go-control-plane's SnapshotCache,
// the peer nodemesh's xDS server is measured against (bench/peers/compare.py).
// It is built from the Go module proxy, pinned by this directory's go.mod and
// go.sum, into a cache outside the repository.
//
// It serves one snapshot to every node (like nodemesh's default snapshot),
// loaded from the JSON file nodemesh exports: {"version": "...",
// "resources": {"<type URL>": [<protobuf JSON with "@type">, ...]}}.
// Commands on stdin, one per line, answered on stdout:
//
//	load PATH   -> "ok <version> <parse s> <parse CPU-s>"   (replace the snapshot)
//	acks TYPE   -> "<count>"         (ACKs received so far for a type URL)
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"

	// The Envoy types a snapshot may hold, registered for protojson.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// allNodes puts every node under one key: one snapshot for all.
type allNodes struct{}

func (allNodes) ID(*core.Node) string { return "all" }

type exported struct {
	Version   string                       `json:"version"`
	Resources map[string][]json.RawMessage `json:"resources"`
}

func load(path string) (*cache.Snapshot, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc exported
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	byType := map[resource.Type][]types.Resource{}
	for typeURL, items := range doc.Resources {
		for i, item := range items {
			packed := &anypb.Any{}
			if err := protojson.Unmarshal(item, packed); err != nil {
				return nil, fmt.Errorf("%s[%d]: %w", typeURL, i, err)
			}
			msg, err := packed.UnmarshalNew()
			if err != nil {
				return nil, fmt.Errorf("%s[%d]: %w", typeURL, i, err)
			}
			byType[typeURL] = append(byType[typeURL], msg.(types.Resource))
		}
	}
	return cache.NewSnapshot(doc.Version, byType)
}

// acks counts ACKs (a request answering a nonce, without error_detail) per type.
type acks struct {
	mu     sync.Mutex
	counts map[string]int
}

func (a *acks) add(typeURL, nonce string, nack bool) {
	if nonce == "" || nack {
		return
	}
	a.mu.Lock()
	a.counts[typeURL]++
	a.mu.Unlock()
}

func (a *acks) get(typeURL string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.counts[typeURL]
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
}

func main() {
	addr := "127.0.0.1:0"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	ctx := context.Background()
	snapshots := cache.NewSnapshotCache(true, allNodes{}, nil)
	counted := &acks{counts: map[string]int{}}
	callbacks := server.CallbackFuncs{
		StreamRequestFunc: func(_ int64, r *discovery.DiscoveryRequest) error {
			counted.add(r.GetTypeUrl(), r.GetResponseNonce(), r.GetErrorDetail() != nil)
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, r *discovery.DeltaDiscoveryRequest) error {
			counted.add(r.GetTypeUrl(), r.GetResponseNonce(), r.GetErrorDetail() != nil)
			return nil
		},
	}
	xds := server.NewServer(ctx, snapshots, callbacks)
	grpcServer := grpc.NewServer(
		grpc.MaxConcurrentStreams(1<<20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{PermitWithoutStream: true}),
	)
	discovery.RegisterAggregatedDiscoveryServiceServer(grpcServer, xds)
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gcp:", err)
		os.Exit(1)
	}
	go func() { _ = grpcServer.Serve(lis) }()
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(out, "ready %d\n", lis.Addr().(*net.TCPAddr).Port)
	out.Flush()
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		cmd, arg, _ := strings.Cut(lines.Text(), " ")
		switch cmd {
		case "load":
			// Parsing the export is not part of a push: report its wall and
			// CPU time so the harness can take it out.
			started, cpu := time.Now(), cpuSeconds()
			snap, err := load(arg)
			parsed, parsedCPU := time.Since(started).Seconds(), cpuSeconds()-cpu
			if err == nil {
				err = snapshots.SetSnapshot(ctx, "all", snap)
			}
			if err != nil {
				fmt.Fprintf(out, "error %v\n", err)
			} else {
				fmt.Fprintf(out, "ok %s %f %f\n", snap.GetVersion(resource.ClusterType), parsed, parsedCPU)
			}
		case "acks":
			fmt.Fprintf(out, "%d\n", counted.get(arg))
		default:
			fmt.Fprintf(out, "error unknown command %q\n", cmd)
		}
		out.Flush()
	}
}
