package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/usage"
	"codeberg.org/provenix/provenix/volunteer"
)

type volunteerFlags struct {
	builderFlags
	systems []string
	once    bool
	farm    bool
	owner   string
	ackWait time.Duration
}

func newVolunteerCmd(g *globals) *cobra.Command {
	f := &volunteerFlags{}
	cmd := &cobra.Command{
		Use:   "volunteer [flags]",
		Short: "Rebuild derivations cache pushers want more votes on, and publish signed results",
		Long: `Serve rebuild requests: when a cache pusher needs more votes on a derivation
before it publishes it, it asks volunteers to rebuild it. A volunteer only
dials out (to NATS): it pulls requests for the systems it serves, imports the
derivation's closure (its .drv files and sources, staged by the first
builder) into its own Nix store, builds the derivation there, attests the
outputs with its own key and builder id, and publishes the result as
'provenix build' does. The pusher counts it as one more vote.

What it vouches for is its own build:
  - the imported closure is checked path by path: every path must be
    content-addressed and match its contents, so no one can slip another
    .drv under the requested name;
  - the requested derivation is built with substitution off (its inputs are
    realised as this Nix usually does);
  - outputs already in the store that it did not build (substituted,
    copied) are rebuilt with --check, and it votes only if the rebuild gives
    the same bytes.
It skips a request when its vote on the outputs is recorded already. A build
that fails is not retried by this volunteer (the request is terminated);
connection trouble releases the request for a retry.

It runs until SIGINT or SIGTERM (a build under way is cancelled and its
request released for another volunteer); --once handles one request and
exits, with status 1 if it failed.

By default it serves the systems the host's Nix builds for ('system' and
'extra-platforms' of nix show-config), publishes to the 'provenix up' running
on --data-dir, and signs with that data directory's builder key. Give it its
own --key and --builder-id: a volunteer sharing the first builder's identity
adds no vote.`,
		Example: `  provenix volunteer --nats-url nats://nats.example:4222 --key volunteer.key --builder-id volunteer-1
  provenix volunteer --system x86_64-linux --store /var/lib/provenix/store --once`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVolunteer(cmd.Context(), g, f)
		},
	}
	fl := cmd.Flags()
	f.builderFlags.register(cmd, "tenant whose rebuild requests to serve")
	fl.StringArrayVar(&f.systems, "system", nil, "Nix system to build for (repeatable; default: the host Nix's system and extra-platforms)")
	fl.BoolVar(&f.once, "once", false, "handle one request, then exit")
	fl.BoolVar(&f.farm, "farm", false, "also take the farm's first builds ('provenix submit'), for the host's systems and system-features, substituting inputs from the cache its Nix is configured with")
	fl.DurationVar(&f.ackWait, "ack-wait", queue.DefaultAckWait, "how long a request may go unacknowledged before another volunteer gets it; a killed volunteer's build waits this long (a running build heartbeats every third of it)")
	fl.StringVar(&f.owner, "owner", "", "who runs this volunteer, as policies count distinct builders (default: the builder id); the farm never gives two replicas of a derivation to one owner")
	return cmd
}

func runVolunteer(ctx context.Context, g *globals, f *volunteerFlags) error {
	if err := nix.Available(); err != nil {
		return &exitError{code: exitUsageErr, err: err}
	}
	if f.ackWait < 3*time.Second {
		return usageError("--ack-wait %s: at least 3s (a build heartbeats every third of it)", f.ackWait)
	}
	nx, err := f.nix(g)
	if err != nil {
		return err
	}
	signer, nixKey, err := f.keys(g)
	if err != nil {
		return err
	}
	systems := f.systems
	if len(systems) == 0 {
		if systems, err = nx.HostSystems(ctx); err != nil {
			if stoppedStarting(ctx, g, err) == nil {
				return nil
			}
			return &exitError{code: exitUsageErr, err: fmt.Errorf("%w\nName the systems to serve with --system", err)}
		}
	}
	conn, err := f.nats.connect(ctx, g, "provenix-volunteer")
	if err != nil {
		return stoppedStarting(ctx, g, err)
	}
	defer conn.Close()
	rec, err := usage.NewPublisher(conn)
	if err != nil {
		return err
	}

	v := &volunteer.Volunteer{
		Conn: conn,
		Builder: &builder.Builder{
			Nix: nx, Queue: conn, Signer: signer, NixKey: nixKey,
			BuilderID: f.builderID, Tenant: f.tenant, Version: version, Logger: g.logger(),
			// Its own copy of the closure goes with each vote: the
			// pusher computes output paths from it (drvpath).
			StageClosures: true,
		},
		Systems: systems,
		Once:    f.once,
		AckWait: f.ackWait,
		Logger:  g.logger(),
		Usage:   rec,
	}
	run := v.Run
	if f.farm {
		if f.once {
			return usageError("--farm and --once go separately")
		}
		cfg, err := nx.Config(ctx)
		if err != nil {
			return stoppedStarting(ctx, g, err)
		}
		m := farm.MachineOf(cfg, f.systems...)
		run = func(ctx context.Context) error { return v.RunWithFarm(ctx, conn, m, f.owner) }
	}
	if err := run(ctx); err != nil {
		return &exitError{code: exitFailed, err: err}
	}
	return nil
}
