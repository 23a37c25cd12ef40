//! The linear assignment problem (a permutation of least total cost), for pairing the rows of a
//! shared `W` with a block's channels.

/// The permutation `p` minimising `Σᵢ cost[i][p[i]]` of a square matrix given row-major with side
/// `n`: Kuhn–Munkres with potentials and shortest augmenting paths, O(n³) (n ≤ 2048 here).
pub fn min_cost_assignment(cost: &[f64], n: usize) -> Vec<usize> {
    assert_eq!(cost.len(), n * n, "the cost matrix must be n × n");
    // 1-based internally: index 0 is the virtual column an augmenting path starts from.
    let (mut u, mut v) = (vec![0.0; n + 1], vec![0.0; n + 1]);
    let mut row_of = vec![0usize; n + 1];
    let mut previous = vec![0usize; n + 1];
    for row in 1..=n {
        row_of[0] = row;
        let mut column = 0;
        let mut slack = vec![f64::INFINITY; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[column] = true;
            let current = row_of[column];
            let (mut delta, mut next) = (f64::INFINITY, 0);
            for j in 1..=n {
                if used[j] {
                    continue;
                }
                let reduced = cost[(current - 1) * n + (j - 1)] - u[current] - v[j];
                if reduced < slack[j] {
                    slack[j] = reduced;
                    previous[j] = column;
                }
                if slack[j] < delta {
                    delta = slack[j];
                    next = j;
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[row_of[j]] += delta;
                    v[j] -= delta;
                } else {
                    slack[j] -= delta;
                }
            }
            column = next;
            if row_of[column] == 0 {
                break;
            }
        }
        // Flip the augmenting path back to its start.
        while column != 0 {
            let back = previous[column];
            row_of[column] = row_of[back];
            column = back;
        }
    }
    let mut assignment = vec![0; n];
    for j in 1..=n {
        assignment[row_of[j] - 1] = j - 1;
    }
    assignment
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every permutation of a small matrix, for an exhaustive check.
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut all = Vec::new();
        for p in permutations(n - 1) {
            for at in 0..=p.len() {
                let mut q = p.clone();
                q.insert(at, n - 1);
                all.push(q);
            }
        }
        all
    }

    #[test]
    fn the_assignment_is_the_cheapest_permutation() {
        // A fixed pseudo-random 6 × 6 matrix; the brute force over its 720 permutations decides.
        let n = 6;
        let mut state = 12345u64;
        let cost: Vec<f64> = (0..n * n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) as f64 / (1u64 << 31) as f64 - 0.5
            })
            .collect();
        let total = |p: &[usize]| p.iter().enumerate().map(|(i, &j)| cost[i * n + j]).sum::<f64>();
        let best = permutations(n).into_iter().map(|p| total(&p)).fold(f64::INFINITY, f64::min);
        let found = min_cost_assignment(&cost, n);
        let mut sorted = found.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        assert!((total(&found) - best).abs() < 1e-12, "{} vs {best}", total(&found));
    }
}
