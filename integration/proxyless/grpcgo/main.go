// Command grpcgo is grpc-go's xDS client (and a plain gRPC backend) for
// nodemesh's proxyless tests. It is built from the Go module proxy, pinned by
// this directory's go.mod, into a cache outside the repository.
//
//	grpcgo server -addr 127.0.0.1:0 -name v1   serves /nodemesh.test.Echo/Who
//	grpcgo client -target xds:///svc.ns.svc.cluster.local:port
//
// The client reads one number per line on stdin, makes that many calls on
// one channel, and prints one JSON line per batch: replies counted by
// backend name, and error messages counted by status. GRPC_XDS_BOOTSTRAP
// names the xDS bootstrap file, as for any grpc-go program.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and balancers
)

const method = "/nodemesh.test.Echo/Who"

// rawCodec passes message bytes through: the tests need no generated code.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: %T is not *[]byte", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: %T is not *[]byte", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "raw" }

func init() { encoding.RegisterCodec(rawCodec{}) }

func serve(addr, name string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.UnknownServiceHandler(
		func(_ any, stream grpc.ServerStream) error {
			var in []byte
			if err := stream.RecvMsg(&in); err != nil {
				return err
			}
			out := []byte(name)
			return stream.SendMsg(&out)
		}))
	fmt.Println(lis.Addr().String())
	return srv.Serve(lis)
}

type batch struct {
	Counts  map[string]int `json:"counts"`
	Errors  map[string]int `json:"errors"`
	Seconds float64        `json:"seconds"`
}

func client(target string, timeout time.Duration) error {
	if !strings.HasPrefix(target, "xds:///") {
		// Anything else would go to DNS, which the tests must never reach.
		return fmt.Errorf("%q is not an xds:/// target", target)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	lines := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for lines.Scan() {
		n, err := strconv.Atoi(lines.Text())
		if err != nil {
			return fmt.Errorf("stdin: %q is not a number", lines.Text())
		}
		result := batch{Counts: map[string]int{}, Errors: map[string]int{}}
		started := time.Now()
		for i := 0; i < n; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			in, reply := []byte("hi"), []byte{}
			err := conn.Invoke(ctx, method, &in, &reply, grpc.ForceCodec(rawCodec{}))
			cancel()
			if err != nil {
				s := status.Convert(err)
				result.Errors[s.Code().String()+": "+s.Message()]++
				continue
			}
			result.Counts[string(reply)]++
		}
		result.Seconds = time.Since(started).Seconds()
		if err := out.Encode(result); err != nil {
			return err
		}
	}
	return lines.Err()
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: grpcgo server|client [flags]")
		os.Exit(2)
	}
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := flags.String("addr", "127.0.0.1:0", "server: listen address")
	name := flags.String("name", "backend", "server: the name every reply carries")
	target := flags.String("target", "", "client: the xds:/// target")
	timeout := flags.Duration("timeout", 5*time.Second, "client: deadline of each call")
	_ = flags.Parse(os.Args[2:])
	var err error
	switch os.Args[1] {
	case "server":
		err = serve(*addr, *name)
	case "client":
		err = client(*target, *timeout)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcgo:", err)
		os.Exit(1)
	}
}
