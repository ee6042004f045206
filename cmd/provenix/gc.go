package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/cache-push/gc"
	"codeberg.org/provenix/provenix/queue"
)

// gcFlags are the flags of `provenix cache gc`.
type gcFlags struct {
	cache    cacheFlags
	maxAge   string
	keepFile string
	grace    string
	dryRun   bool
	json     bool
	staging  bool
	nats     natsFlags
}

func newGCCmd(g *globals) *cobra.Command {
	var f gcFlags
	cmd := &cobra.Command{
		Use:   "gc [flags]",
		Short: "Delete cache paths nothing keeps, and orphans of interrupted pushes",
		Long: `Collect garbage in a cache directory or S3 bucket (the --s3-* flags of
'provenix up'). Kept are the narinfos newer than
--max-age, the store paths listed in --keep (one a line, # comments), and
everything those reference, transitively. Every other path goes: narinfo,
then provenance sidecar, then NAR file, so a client never sees a narinfo
without its NAR. NAR files and sidecars no narinfo accounts for go once
older than --grace. Malformed narinfos are reported and kept. In S3, uploads
interrupted before their commit (temporary objects and incomplete multipart
uploads) older than --grace go too.

With --staging, clean the NATS staging bucket instead: staged NARs older
than --max-age, and chunks of interrupted uploads older than --grace
(default 1h).

Durations take Go syntax (90m, 36h) or days (30d).`,
		Example: `  provenix cache gc --dir /srv/cache --max-age 30d --dry-run
  provenix cache gc --dir /srv/cache --keep pinned.txt --json
  PROVENIX_S3_SECRET=... provenix cache gc --s3-endpoint s3.example.org \
      --s3-bucket nix-cache --s3-access-key AKIA... --max-age 30d
  provenix cache gc --staging --nats-url nats://127.0.0.1:4222 --max-age 7d`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.staging {
				return runStagingGC(cmd.Context(), g, f)
			}
			return runCacheGC(cmd.Context(), g, f)
		},
	}
	f.cache.register(cmd)
	cmd.Flags().StringVar(&f.maxAge, "max-age", "", "keep narinfos modified within this age (e.g. 30d)")
	cmd.Flags().StringVar(&f.keepFile, "keep", "", "file of store paths whose closures are kept")
	cmd.Flags().StringVar(&f.grace, "grace", "", "leave orphans and narinfos younger than this (default 1d)")
	cmd.Flags().BoolVar(&f.dryRun, "dry-run", false, "report what would be deleted, delete nothing")
	cmd.Flags().BoolVar(&f.json, "json", false, "print the report as JSON")
	cmd.Flags().BoolVar(&f.staging, "staging", false, "clean the NATS staging bucket instead of a cache")
	f.nats.register(cmd)
	return cmd
}

func runCacheGC(ctx context.Context, g *globals, f gcFlags) error {
	var opts gc.Options
	var err error
	if opts.MaxAge, err = parseDays(f.maxAge); err != nil {
		return usageError("--max-age: %v", err)
	}
	if opts.Grace, err = parseDays(f.grace); err != nil {
		return usageError("--grace: %v", err)
	}
	if f.keepFile != "" {
		kf, err := os.Open(f.keepFile)
		if err != nil {
			return usageError("--keep: %v", err)
		}
		opts.Keep, err = gc.ParseKeepFile(kf)
		kf.Close()
		if err != nil {
			return usageError("--keep %s: %v", f.keepFile, err)
		}
	}
	if opts.MaxAge == 0 && f.keepFile == "" {
		return usageError("nothing says what to keep\nPass --max-age (e.g. --max-age 30d), --keep FILE, or both")
	}
	opts.DryRun = f.dryRun
	st, err := f.cache.open(ctx, g, true, false)
	if err != nil {
		return err
	}
	defer st.Close()
	rep, err := gc.Collect(ctx, st.Store, opts)
	if rep != nil {
		if f.json {
			if jerr := writeJSON(g, rep); jerr != nil {
				return jerr
			}
		} else {
			printGCReport(g.stdout, rep)
		}
	}
	return err
}

func runStagingGC(ctx context.Context, g *globals, f gcFlags) error {
	if f.cache.dir != "" || f.cache.s3.endpoint != "" || f.keepFile != "" {
		return usageError("--dir, --s3-* and --keep apply to a cache, not to --staging")
	}
	var opts queue.StagingGCOptions
	var err error
	if opts.MaxAge, err = parseDays(f.maxAge); err != nil {
		return usageError("--max-age: %v", err)
	}
	if opts.Grace, err = parseDays(f.grace); err != nil {
		return usageError("--grace: %v", err)
	}
	opts.DryRun = f.dryRun
	c, err := f.nats.connect(ctx, g, "provenix-gc")
	if err != nil {
		return err
	}
	defer c.Close()
	rep, err := c.CollectStaging(ctx, opts)
	if rep != nil {
		if f.json {
			if jerr := writeJSON(g, rep); jerr != nil {
				return jerr
			}
		} else {
			verb := "deleted"
			if rep.DryRun {
				verb = "would delete"
			}
			for _, o := range rep.Objects {
				fmt.Fprintf(g.stdout, "%s staged %s\n", verb, o.Key)
			}
			for _, o := range rep.Orphans {
				fmt.Fprintf(g.stdout, "%s %d orphan chunks of upload %s (last %s)\n", verb, o.Chunks, o.ID, o.Last.Format(time.RFC3339))
			}
			fmt.Fprintf(g.stdout, "%s %d staged objects (%s) and %d orphan uploads; kept %d objects\n",
				verb, len(rep.Objects), humanize.IBytes(uint64(rep.BytesFreed)), len(rep.Orphans), rep.Kept)
			if rep.Held > 0 {
				fmt.Fprintf(g.stdout, "kept %d old objects as the evidence of disputes (see provenix diff)\n", rep.Held)
			}
		}
	}
	return err
}

func printGCReport(w io.Writer, rep *gc.Report) {
	verb := "deleted"
	if rep.DryRun {
		verb = "would delete"
	}
	for _, p := range rep.Paths {
		fmt.Fprintf(w, "%s %s\n", verb, p.StorePath)
	}
	for _, o := range rep.Orphans {
		fmt.Fprintf(w, "%s orphan %s\n", verb, o.Key)
	}
	for _, m := range rep.Malformed {
		fmt.Fprintf(w, "kept malformed %s: %s\n", m.Key, m.Error)
	}
	for _, h := range rep.MissingKeep {
		fmt.Fprintf(w, "keep-listed %s is not in the cache\n", h)
	}
	if rep.OrphansSkipped != "" {
		fmt.Fprintf(w, "orphan NARs left alone: %s\n", rep.OrphansSkipped)
	}
	if len(rep.Chunks) > 0 {
		fmt.Fprintf(w, "%s %d chunks no NAR uses\n", verb, len(rep.Chunks))
	}
	if rep.ChunksSkipped != "" {
		fmt.Fprintf(w, "chunks left alone: %s\n", rep.ChunksSkipped)
	}
	fmt.Fprintf(w, "%s %d of %d paths and %d orphans, %s; kept %d paths\n",
		verb, len(rep.Paths), rep.Narinfos, len(rep.Orphans), humanize.IBytes(uint64(rep.BytesFreed)), rep.Kept)
}

// parseDays parses a Go duration or a whole number of days ("30d"); ""
// is zero.
func parseDays(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	var d time.Duration
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 || days > 100*365 {
			return 0, fmt.Errorf("%q: want a number of days such as 30d", s)
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, err
		}
	}
	if d < 0 {
		return 0, fmt.Errorf("%q is negative", s)
	}
	return d, nil
}
