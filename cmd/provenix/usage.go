package main

import (
	"context"
	"encoding/json"
	"time"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/usage"
)

type usageFlags struct {
	nats      natsFlags
	since     string
	by        string
	tenant    string
	builderID string
	json      bool
	csv       bool
}

func newUsageCmd(g *globals) *cobra.Command {
	f := &usageFlags{}
	cmd := &cobra.Command{
		Use:   "usage [flags]",
		Short: "Show what jobs, builds and cache serving cost, by tenant, repository, builder or reader: a table to bill from",
		Long: `Read the usage records (usage.<tenant>.* in the USAGE stream of the NATS
account connected to) stored since --since and sum them by --by: per
tenant, repository (forge host and owner/name), builder id, or cache
reader. Runners record one per job (CPU seconds of every process of the
job, from its cgroup where it has one; wall time; peak memory; NAR bytes
built and staged), volunteers and farm workers one per build, and the
cache server one per reader and minute (bytes served, requests).

Records are each publisher's word: a runner can lie about its own usage,
in its own tenant and under its own builder id only (docs/usage.md).

A pusher's credentials read its tenant's records; a runner's read its
own builder's (with --tenant and --builder-id).`,
		Example: `  provenix usage --since 30d --by tenant
  provenix usage --since 2026-11-01 --by repo --csv > november.csv
  provenix usage --nats-url tls://nats.example.org --nats-nkey runner.nk --tenant acme --builder-id forgejo-runner:arm1 --by builder --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runUsage(cmd.Context(), g, f)
		},
	}
	f.nats.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.since, "since", "30d", "how far back: a duration (30d, 2w, 36h) or a date (2006-01-02)")
	fl.StringVar(&f.by, "by", string(usage.ByTenant), "group by tenant, repo, builder or reader")
	fl.StringVar(&f.tenant, "tenant", "", "only this tenant's records (default: every tenant of the account)")
	fl.StringVar(&f.builderID, "builder-id", "", "only this builder's records (with --tenant; all a runner's credentials may read)")
	fl.BoolVar(&f.json, "json", false, "print the report as JSON")
	fl.BoolVar(&f.csv, "csv", false, "print the report as CSV")
	return cmd
}

func runUsage(ctx context.Context, g *globals, f *usageFlags) error {
	if f.json && f.csv {
		return usageError("--json and --csv exclude each other")
	}
	since, err := usage.ParseSince(f.since, time.Now())
	if err != nil {
		return usageError("--since: %v", err)
	}
	by, err := usage.ParseBy(f.by)
	if err != nil {
		return usageError("%v", err)
	}
	filter, err := usage.Filter(f.tenant, f.builderID)
	if err != nil {
		return usageError("%v", err)
	}
	conn, err := f.nats.connect(ctx, g, "provenix usage")
	if err != nil {
		return err
	}
	defer conn.Close()
	rep, err := usage.Summarize(ctx, conn, filter, since, by)
	if err != nil {
		return err
	}
	switch {
	case f.json:
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	case f.csv:
		return rep.WriteCSV(g.stdout)
	}
	return rep.WriteTable(g.stdout)
}

// retention is a flag value for how long records are kept: a duration
// with days and weeks (usage.ParseDuration).
type retention struct{ d *time.Duration }

func (r retention) String() string {
	if r.d == nil {
		return "0s"
	}
	return r.d.String()
}

func (r retention) Set(s string) error {
	d, err := usage.ParseDuration(s)
	if err != nil {
		return err
	}
	*r.d = d
	return nil
}

func (retention) Type() string { return "duration" }
