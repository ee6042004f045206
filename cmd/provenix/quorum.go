package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/nardiff"
	"codeberg.org/provenix/provenix/up"
)

func newBuildersCmd(g *globals) *cobra.Command {
	var nf natsFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "builders",
		Short: "Show builder reputation: agreements, minority disagreements, quarantine",
		Long: `Print every builder the pushers have counted: how often its NAR agreed with
the published one, how often it was in the minority, when it was last seen,
and whether it is quarantined (its votes ignored) after too many minority
disagreements within the policy's reputation window.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := nf.connect(cmd.Context(), g, "provenix-builders")
			if err != nil {
				return err
			}
			defer conn.Close()
			reps, err := cachepush.Reputations(cmd.Context(), conn)
			if err != nil {
				return &exitError{code: exitUsageErr, err: err}
			}
			if asJSON {
				if reps == nil {
					reps = []cachepush.Reputation{}
				}
				return writeJSON(g, reps)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "BUILDER\tOWNER\tAGREED\tMINORITY\tRECENT-MINORITY\tMALFORMED\tLAST SEEN\tSTATE")
			for _, r := range reps {
				state := "ok"
				if r.Quarantined {
					state = "QUARANTINED since " + r.QuarantinedAt.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", r.Builder, r.Owner, r.Agreements, r.Disagreements, len(r.Minority), r.Malformed, r.LastSeen.UTC().Format(time.RFC3339), state)
			}
			return tw.Flush()
		},
	}
	nf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var cnf natsFlags
	clear := &cobra.Command{
		Use:   "clear BUILDER-ID",
		Short: "Lift a builder's quarantine (its recent minority votes and malformed statements are forgotten; totals stay)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := cnf.connect(cmd.Context(), g, "provenix-builders")
			if err != nil {
				return err
			}
			defer conn.Close()
			if err := cachepush.ClearQuarantine(cmd.Context(), conn, args[0]); err != nil {
				return &exitError{code: exitFailed, err: err}
			}
			fmt.Fprintf(g.stdout, "cleared %s\n", args[0])
			return nil
		},
	}
	cnf.register(clear)
	cmd.AddCommand(clear)
	return cmd
}

func newStatusCmd(g *globals) *cobra.Command {
	var nf natsFlags
	var asJSON bool
	var tenant, policyFile, storeRoot string
	var withDiff bool
	cmd := &cobra.Command{
		Use:   "status DRV|STOREPATH",
		Short: "Show the votes on a derivation's outputs, their NAR hashes and the verdict",
		Long: `Read the pushers' votes on a store path (or on every output of a .drv) and
say where it stands under the cache policy: pending (more votes needed),
agreed (published), disputed (builders disagree; nothing published) or
trusted-only (published from the designated trusted builder, unverified by
quorum) — and why.`,
		Example: `  provenix status /nix/store/…-provenix-hello
  provenix status --json /nix/store/…-provenix-hello.drv`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			pol, err := loadStatusPolicy(g, policyFile)
			if err != nil {
				return err
			}
			paths, err := cachepush.StatusPaths(args[0], storeRoot)
			if err != nil {
				return &exitError{code: exitUsageErr, err: err}
			}
			conn, err := nf.connect(ctx, g, "provenix-status")
			if err != nil {
				return err
			}
			defer conn.Close()
			var outs []*cachepush.PathStatus
			for _, sp := range paths {
				po, err := cachepush.Status(ctx, conn, pol, tenant, sp)
				if err != nil {
					return &exitError{code: exitUsageErr, err: err}
				}
				if withDiff && len(po.Votes) > 0 && po.Verdict != cachepush.VerdictAgreed {
					po.Diff, _ = cachepush.DiffPath(ctx, conn, conn, pol, tenant, sp, nardiff.Options{})
				}
				outs = append(outs, po)
			}
			if asJSON {
				return writeJSON(g, outs)
			}
			for _, po := range outs {
				fmt.Fprintf(g.stdout, "%s\n  verdict: %s — %s\n", po.StorePath, po.Verdict, po.Why)
				if po.WaitingSince != nil {
					fmt.Fprintf(g.stdout, "  waiting for: %s (since %s)\n", strings.Join(po.WaitingFor, ", "), po.WaitingSince.UTC().Format(time.RFC3339))
				}
				if po.Incomplete != nil {
					fmt.Fprintf(g.stdout, "  incomplete: reported at %s\n", po.Incomplete.UTC().Format(time.RFC3339))
				}
				for _, v := range po.Votes {
					mark := " "
					if v.Agrees {
						mark = "✓"
					}
					fmt.Fprintf(g.stdout, "  %s %-32s NAR %.16s… at %s\n", mark, v.Builder, v.NarSHA256, v.Time.UTC().Format(time.RFC3339))
				}
				if po.Diff != nil && len(po.Diff.Comparisons) > 0 {
					fmt.Fprint(g.stdout, po.Diff.Text())
				}
			}
			return nil
		},
	}
	nf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&tenant, "tenant", up.DefaultTenant, "tenant whose votes to read")
	cmd.Flags().StringVar(&policyFile, "policy", "", "cache policy deciding the quorum (default: the data directory's policy.yaml)")
	cmd.Flags().StringVar(&storeRoot, "store", "", "chroot store holding the .drv")
	cmd.Flags().BoolVar(&withDiff, "diff", false, "for a disputed path, also show what differs between its NARs (as provenix diff)")
	return cmd
}
