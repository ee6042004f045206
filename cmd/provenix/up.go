package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/up"
)

type upFlags struct {
	nats       natsFlags
	listen     string
	natsListen string
	tenant     string
}

func newUpCmd(g *globals) *cobra.Command {
	f := &upFlags{}
	cmd := &cobra.Command{
		Use:   "up [flags]",
		Short: "Run Provenix in one process: embedded NATS, cache pusher and cache server",
		Long: `Run an embedded NATS server (JetStream on disk under the data directory), a
cache pusher and the binary cache's HTTP server. On first start it creates
the data directory: a builder key, a Nix cache key, a NATS token and a
default-deny policy trusting the local builder (builder id "local").

'provenix build' finds the running instance through the data directory.
With --nats-url it uses an external NATS server or cluster instead.
It stops on SIGINT/SIGTERM, letting in-flight pushes finish.`,
		Example: `  provenix up
  provenix up --data-dir /var/lib/provenix --listen 0.0.0.0:8080
  provenix up --nats-url nats://127.0.0.1:4222`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runUp(cmd.Context(), g, f)
		},
	}
	f.nats.register(cmd)
	cmd.Flags().StringVar(&f.listen, "listen", up.DefaultListen, "cache HTTP server address")
	cmd.Flags().StringVar(&f.natsListen, "nats-listen", "", "embedded NATS address (default: a free port on 127.0.0.1)")
	cmd.Flags().StringVar(&f.tenant, "tenant", up.DefaultTenant, "tenant whose results this pusher publishes")
	return cmd
}

func runUp(ctx context.Context, g *globals, f *upFlags) error {
	s, err := up.New(up.Config{
		DataDir: g.dataDir, Listen: f.listen, NATSURL: f.nats.url, NATSListen: f.natsListen,
		Tenant: f.tenant, Logger: g.logger(),
	})
	if err != nil {
		return err
	}
	if err := s.Open(ctx); err != nil {
		return err
	}
	p := s.Paths()
	fmt.Fprintf(g.stdout, "provenix up: data %s\n  NATS   %s\n  cache  %s (public key in %s)\n  policy %s\nCtrl-C stops.\n",
		p.Dir, s.NATSURL(), s.CacheURL(), p.CachePub(), p.Policy())
	<-ctx.Done()
	fmt.Fprintln(g.stdout, "provenix up: stopping")
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return s.Close(cctx)
}
