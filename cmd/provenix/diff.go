package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/nardiff"
	"codeberg.org/provenix/provenix/up"
)

func newDiffCmd(g *globals) *cobra.Command {
	var nf natsFlags
	var asJSON bool
	var tenant, policyFile string
	cmd := &cobra.Command{
		Use:   "diff STOREPATH",
		Short: "Show what differs between the NARs builders disagree on, and why",
		Long: `Compare the staged NARs that the votes on a store path name (the most
voted against each other one), streaming both: files only in one, type and
mode changes, contents with size and sha256, a unified diff of small text,
the ELF sections or archive members that differ, and recognised causes
(timestamps, build paths, file order, random identifiers).`,
		Example: `  provenix diff /nix/store/…-hello
  provenix diff --json /nix/store/…-hello`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pol, err := loadStatusPolicy(g, policyFile)
			if err != nil {
				return err
			}
			conn, err := nf.connect(cmd.Context(), g, "provenix-diff")
			if err != nil {
				return err
			}
			defer conn.Close()
			pd, err := cachepush.DiffPath(cmd.Context(), conn, conn, pol, tenant, args[0], nardiff.Options{})
			if errors.Is(err, cachepush.ErrNothingToDiff) {
				return &exitError{code: exitFailed, err: err}
			}
			if err != nil {
				return &exitError{code: exitUsageErr, err: err}
			}
			if asJSON {
				return writeJSON(g, pd)
			}
			fmt.Fprint(g.stdout, pd.Text())
			return nil
		},
	}
	nf.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&tenant, "tenant", up.DefaultTenant, "tenant whose votes to read")
	cmd.Flags().StringVar(&policyFile, "policy", "", "cache policy deciding the quorum (default: the data directory's policy.yaml)")
	return cmd
}

// loadStatusPolicy loads the policy status and diff tally votes with.
func loadStatusPolicy(g *globals, file string) (*policy.Policy, error) {
	if file == "" {
		file = up.Paths{Dir: g.dataDir}.Policy()
	}
	pol, err := policy.Load(file)
	if err != nil {
		return nil, &exitError{code: exitUsageErr, err: err}
	}
	return pol, nil
}
