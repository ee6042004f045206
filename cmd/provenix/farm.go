package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/up"
)

func newFarmCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "farm",
		Short: "Follow and stop build sets submitted with 'provenix submit'",
	}
	var (
		nf       natsFlags
		asJSON   bool
		watch    bool
		cancelNF natsFlags
	)
	status := &cobra.Command{
		Use:   "status [flags] SET",
		Short: "Show a build set's progress: done, building, waiting, failed, blocked",
		Long: `Print how many derivations of the set are done (and how many were in the
cache already), building, waiting for inputs, failed and blocked, then each
failed derivation with the last lines of its log and each blocked one with
the derivation that blocks it. The exit status is 0 when every derivation
is done, 1 when the set finished with failures, 3 while it runs.

With --watch it first follows the set until it is finished, printing its
progress (done, building, waiting, failed, blocked, disputed, and an ETA) to
stderr as it changes, or with --json one JSON object a line to stdout.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFarmStatus(cmd.Context(), g, &nf, args[0], asJSON, watch)
		},
	}
	nf.register(status)
	status.Flags().BoolVar(&asJSON, "json", false, "print the status, with every derivation's state, as JSON")
	status.Flags().BoolVar(&watch, "watch", false, "follow the set until it is finished")
	cancel := &cobra.Command{
		Use:   "cancel [flags] SET",
		Short: "Stop dispatching a build set; its queued requests are dropped, builds under way finish",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFarmCancel(cmd.Context(), g, &cancelNF, args[0])
		},
	}
	cancelNF.register(cancel)
	cmd.AddCommand(status, cancel, newFarmSchedulerCmd(g), newFarmStatsCmd(g))
	return cmd
}

type farmSchedulerFlags struct {
	nats      natsFlags
	cache     string
	cacheKeys []string
	group     string
	resync    time.Duration
}

func newFarmSchedulerCmd(g *globals) *cobra.Command {
	f := &farmSchedulerFlags{}
	cmd := &cobra.Command{
		Use:   "scheduler [flags]",
		Short: "Dispatch build sets to workers as their inputs reach the cache",
		Long: `Run a farm scheduler until SIGINT or SIGTERM: it follows the cache pushers'
events and dispatches each derivation of an open build set once the outputs
it needs are in the cache, retries failed builds on other builders, and
blocks what depends on a derivation that failed for good. Any number of
schedulers may run, in one group or several: their state is in JetStream
(compare-and-set), a dispatch is one message whoever sends it, and a
scheduler that starts recomputes every open set from the bucket and the
cache.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runFarmScheduler(cmd.Context(), g, f)
		},
	}
	f.nats.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.cache, "cache", "", "binary cache whose paths count as built (default: the running 'provenix up' of --data-dir)")
	fl.StringArrayVar(&f.cacheKeys, "cache-key", nil, "file holding the cache's public key, NAME:base64 (repeatable; default: the data directory's keys/cache.pub)")
	fl.StringVar(&f.group, "group", farm.DefaultGroup, "scheduler group: the schedulers of a group share the pushers' events")
	fl.DurationVar(&f.resync, "resync", farm.DefaultResyncEvery, "how often every open set is recomputed from the bucket and the cache")
	return cmd
}

func runFarmScheduler(ctx context.Context, g *globals, f *farmSchedulerFlags) error {
	cache, err := farmCache(g, f.cache, f.cacheKeys)
	if err != nil {
		return err
	}
	conn, err := f.nats.connect(ctx, g, "provenix farm scheduler")
	if err != nil {
		return stoppedStarting(ctx, g, err)
	}
	defer conn.Close()
	if err := conn.EnsureFarm(ctx, queue.StreamOptions{}); err != nil {
		return stoppedStarting(ctx, g, err)
	}
	s, err := farm.NewScheduler(farm.SchedulerConfig{Conn: conn, Cache: cache, Group: f.group, ResyncEvery: f.resync, Logger: g.logger()})
	if err != nil {
		return usageError("%v", err)
	}
	if err := s.Open(ctx); err != nil {
		return stoppedStarting(ctx, g, err)
	}
	g.logger().Info("farm scheduler running", "group", f.group)
	<-ctx.Done()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return s.Close(cctx)
}

// exitRunning is farm status's exit code for a set still running.
const exitRunning = 3

func runFarmStatus(ctx context.Context, g *globals, nf *natsFlags, id string, asJSON, watch bool) error {
	conn, err := nf.connect(ctx, g, "provenix farm status")
	if err != nil {
		return err
	}
	defer conn.Close()
	if watch {
		if err := watchSet(ctx, g, conn, id, asJSON); err != nil {
			return err
		}
	}
	st, err := farm.GetStatus(ctx, conn, id)
	if err != nil {
		return err
	}
	return printSetStatus(g, st, asJSON)
}

// watchSet prints set id's progress as it changes until it is finished:
// a line to stderr, or with asJSON a JSON object a line to stdout.
func watchSet(ctx context.Context, g *globals, conn *queue.Conn, id string, asJSON bool) error {
	enc := json.NewEncoder(g.stdout)
	return farm.Follow(ctx, conn, id, time.Second, func(p *farm.Progress) {
		if asJSON {
			enc.Encode(p)
			return
		}
		final := p.Counts[farm.Done] + p.Counts[farm.Failed] + p.Counts[farm.Blocked]
		const width = 30
		bar := strings.Repeat("#", final*width/max(p.Set.Size, 1))
		eta := "ETA unknown"
		if p.Finished() {
			eta = "finished"
		} else if p.ETA > 0 {
			eta = "ETA " + p.ETA.String()
		}
		fmt.Fprintf(g.stderr, "[%-*s] %d/%d done, %d building, %d waiting, %d failed, %d blocked, %d disputed, %s\n",
			width, bar, p.Counts[farm.Done], p.Set.Size, p.Counts[farm.Dispatched], p.Counts[farm.Waiting],
			p.Counts[farm.Failed], p.Counts[farm.Blocked], p.Disputed, eta)
	})
}

// printSetStatus prints st (see farm status) and returns the exit
// status it calls for.
func printSetStatus(g *globals, st *farm.SetStatus, asJSON bool) error {
	id := st.Set.ID
	if asJSON {
		if err := writeJSON(g, st); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(g.stdout, st)
		for _, d := range st.Derivations {
			switch d.Status {
			case farm.Failed:
				fmt.Fprintf(g.stdout, "failed  %s\n", d.DrvPath)
				if n := len(d.Failures); n > 0 {
					for _, l := range d.Failures[n-1].Log {
						fmt.Fprintf(g.stdout, "        | %s\n", l)
					}
				}
			case farm.Blocked:
				fmt.Fprintf(g.stdout, "blocked %s by %s\n", d.DrvPath, path.Base(d.BlockedBy))
			}
		}
	}
	switch {
	case !st.Finished():
		return &exitError{code: exitRunning, err: fmt.Errorf("build set %s is still running", id)}
	case st.Counts[farm.Done] != st.Set.Size:
		return &exitError{code: exitFailed, err: fmt.Errorf("build set %s finished with %d failed and %d blocked", id, st.Counts[farm.Failed], st.Counts[farm.Blocked])}
	}
	return nil
}

func runFarmCancel(ctx context.Context, g *globals, nf *natsFlags, id string) error {
	conn, err := nf.connect(ctx, g, "provenix farm cancel")
	if err != nil {
		return err
	}
	defer conn.Close()
	set, err := farm.Cancel(ctx, conn, id)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "build set %s cancelled at %s\n", set.ID, set.Canceled.Format("2006-01-02 15:04:05Z"))
	return nil
}

type farmStatsFlags struct {
	nats   natsFlags
	tenant string
	window time.Duration
	json   bool
}

func newFarmStatsCmd(g *globals) *cobra.Command {
	f := &farmStatsFlags{}
	cmd := &cobra.Command{
		Use:   "stats [flags]",
		Short: "Show what each builder and owner built for the farm: builds, failures, CPU hours, disputes by cause",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runFarmStats(cmd.Context(), g, f)
		},
	}
	f.nats.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.tenant, "tenant", up.DefaultTenant, "tenant whose farm to show")
	fl.DurationVar(&f.window, "window", 7*24*time.Hour, "how far back to count")
	fl.BoolVar(&f.json, "json", false, "print the statistics as JSON")
	return cmd
}

func runFarmStats(ctx context.Context, g *globals, f *farmStatsFlags) error {
	conn, err := f.nats.connect(ctx, g, "provenix farm stats")
	if err != nil {
		return err
	}
	defer conn.Close()
	st, err := farm.ReadStats(ctx, conn, f.tenant, time.Now().Add(-f.window))
	if err != nil {
		return err
	}
	if f.json {
		return writeJSON(g, st)
	}
	fmt.Fprintf(g.stdout, "farm of tenant %s since %s\n", st.Tenant, st.Since.Local().Format(time.DateTime))
	for _, part := range []struct {
		title string
		rows  []farm.Tally
		name  func(farm.Tally) string
	}{
		{"owners", st.Owners, func(t farm.Tally) string { return t.Owner }},
		{"builders", st.Builders, func(t farm.Tally) string { return t.Builder }},
	} {
		fmt.Fprintf(g.stdout, "\n%-40s %8s %8s %8s %10s  %s\n", part.title, "builds", "failed", "agree", "CPU hours", "disputes")
		if len(part.rows) == 0 {
			fmt.Fprintln(g.stdout, "(no builds)")
		}
		for _, t := range part.rows {
			agree, name := "-", part.name(t)
			if r := t.AgreementRate(); r >= 0 {
				agree = fmt.Sprintf("%.0f%%", r*100)
			}
			if t.Quarantined {
				name += " (quarantined)"
			}
			fmt.Fprintf(g.stdout, "%-40s %8d %8d %8s %10.2f  %s\n", name, t.Builds, t.Failures, agree, t.CPUSeconds/3600, cmp.Or(t.DisputeText(), "-"))
		}
	}
	return nil
}
