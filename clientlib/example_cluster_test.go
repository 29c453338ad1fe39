package clientlib_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/wire"
)

// A runnable tour: start a whole cluster in this process (devcluster), then
// two clients take turns on one exclusive token. The second waits until the
// first releases, and gets a higher fence.
func Example_handoff() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cluster, err := devcluster.Start(ctx, devcluster.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()

	// The cluster's client key; see ExampleDialConfig_keyFile.
	first, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: cluster.Seeds(), KeyFile: cluster.KeyFile()})
	if err != nil {
		log.Fatal(err)
	}
	defer first.Close()
	second, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: cluster.Seeds(), KeyFile: cluster.KeyFile()})
	if err != nil {
		log.Fatal(err)
	}
	defer second.Close()

	a, err := first.Acquire(ctx, "inode/42", wire.EX)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("first holds inode/42: epoch %d, seq %d\n", wire.FenceEpoch(a.Fence()), wire.FenceSeq(a.Fence()))

	granted := make(chan *clientlib.Token)
	go func() {
		b, err := second.Acquire(ctx, "inode/42", wire.EX) // waits: first holds it
		if err != nil {
			log.Fatal(err)
		}
		granted <- b
	}()
	// first's default revoke handler gives the token back when second asks.
	b := <-granted
	fmt.Printf("second holds inode/42: epoch %d, seq %d\n", wire.FenceEpoch(b.Fence()), wire.FenceSeq(b.Fence()))
	<-a.Lost() // first's token went back on revocation
	fmt.Println("first's token is no longer valid:", !a.Valid())
	b.Release(ctx)
	// Output:
	// first holds inode/42: epoch 1, seq 1
	// second holds inode/42: epoch 1, seq 2
	// first's token is no longer valid: true
}
