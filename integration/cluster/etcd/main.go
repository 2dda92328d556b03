// Command etcd is the upstream etcd server, built from go.etcd.io/etcd/server/v3
// at the version go.mod pins. It is etcd's own main.go: the root module that
// holds it upstream (go.etcd.io/etcd/v3) is not served with a usable go.mod.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
