//! Checks of a `TreeEnsembleClassifier`'s trees before tract builds them.
//!
//! tract walks a tree without bounds or cycle checks and adds each leaf's
//! weight to its class without checking the class, trusting the exporter.
//! A hostile file could so make a node loop forever or write past its
//! scores; these checks refuse such a file. They also refuse trees tract
//! would silently misread: tract takes a child's id as its position in the
//! tree, so each tree's nodes must be numbered 0, 1, 2, ...

use std::collections::BTreeMap;

use plexus_core::{Error, Result};
use tract_onnx::pb::NodeProto;

const BRANCH_MODES: [&str; 6] = [
    "BRANCH_LEQ",
    "BRANCH_LT",
    "BRANCH_GTE",
    "BRANCH_GT",
    "BRANCH_EQ",
    "BRANCH_NEQ",
];

fn ints<'a>(node: &'a NodeProto, name: &str) -> Option<&'a [i64]> {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.ints.as_slice())
}

fn strings<'a>(node: &'a NodeProto, name: &str) -> Option<&'a [Vec<u8>]> {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.strings.as_slice())
}

/// A node of a tree: its id, and its true and false children unless it is
/// a leaf.
type TreeNode = (i64, Option<(i64, i64)>);

/// Checks the trees of the `TreeEnsembleClassifier` `node`, called `name`
/// in messages.
pub(crate) fn check_classifier(node: &NodeProto, name: &str) -> Result<()> {
    let bad = |what: String| {
        Error::invalid(format!(
            "TreeEnsembleClassifier \"{name}\" {what}; the file is damaged or was not written by an \
             ONNX exporter: re-export the model"
        ))
    };
    let n_classes = match (
        ints(node, "classlabels_int64s"),
        strings(node, "classlabels_strings"),
    ) {
        (Some(labels), None) => labels.len(),
        (None, Some(labels)) => labels.len(),
        _ => {
            return Err(bad(
                "must have exactly one of classlabels_int64s and classlabels_strings".into(),
            ))
        }
    };
    let attr = |name: &str| ints(node, name).unwrap_or_default();
    let tree_ids = attr("nodes_treeids");
    let node_ids = attr("nodes_nodeids");
    let features = attr("nodes_featureids");
    let true_ids = attr("nodes_truenodeids");
    let false_ids = attr("nodes_falsenodeids");
    let modes = strings(node, "nodes_modes").unwrap_or_default();
    let n = tree_ids.len();
    if n == 0
        || [
            node_ids.len(),
            features.len(),
            true_ids.len(),
            false_ids.len(),
            modes.len(),
        ]
        .iter()
        .any(|&len| len != n)
    {
        return Err(bad(
            "must give nodes_treeids, nodes_nodeids, nodes_featureids, nodes_truenodeids, \
             nodes_falsenodeids and nodes_modes, all of one length"
                .into(),
        ));
    }
    let in_range = |v: &[i64]| v.iter().all(|&x| (0..=i64::from(u32::MAX)).contains(&x));
    if ![tree_ids, node_ids, features, true_ids, false_ids]
        .into_iter()
        .all(in_range)
    {
        return Err(bad(
            "has a negative or too large tree, node or feature id".into()
        ));
    }

    let mut trees: BTreeMap<i64, Vec<TreeNode>> = BTreeMap::new();
    for i in 0..n {
        let mode = modes[i].as_slice();
        let children = if mode == b"LEAF" {
            None
        } else if BRANCH_MODES.iter().any(|m| m.as_bytes() == mode) {
            Some((true_ids[i], false_ids[i]))
        } else {
            return Err(bad(format!(
                "has a node of unknown mode \"{}\"",
                String::from_utf8_lossy(mode)
            )));
        };
        trees
            .entry(tree_ids[i])
            .or_default()
            .push((node_ids[i], children));
    }
    for (tree, nodes) in &mut trees {
        nodes.sort_by_key(|&(id, _)| id);
        if nodes.iter().enumerate().any(|(i, &(id, _))| id != i as i64) {
            return Err(bad(format!(
                "numbers the nodes of tree {tree} other than 0, 1, 2, ... (the engine reads a \
                 child's id as its position in the tree)"
            )));
        }
        let k = nodes.len() as i64;
        let children: Vec<Option<(usize, usize)>> = nodes
            .iter()
            .map(|&(_, c)| c.map(|(t, f)| (t as usize, f as usize)))
            .collect();
        if nodes
            .iter()
            .any(|&(_, c)| c.is_some_and(|(t, f)| t >= k || f >= k))
        {
            return Err(bad(format!(
                "has a branch in tree {tree} to a node that does not exist"
            )));
        }
        if has_cycle(&children) {
            return Err(bad(format!(
                "has a cycle in tree {tree} (a node that leads back to itself)"
            )));
        }
    }

    let leaf_trees = attr("class_treeids");
    let leaf_nodes = attr("class_nodeids");
    let leaf_classes = attr("class_ids");
    if leaf_trees.is_empty()
        || leaf_nodes.len() != leaf_trees.len()
        || leaf_classes.len() != leaf_trees.len()
    {
        return Err(bad(
            "must give class_treeids, class_nodeids and class_ids, all of one non-zero length"
                .into(),
        ));
    }
    if leaf_classes
        .iter()
        .any(|&c| usize::try_from(c).map_or(true, |c| c >= n_classes))
    {
        return Err(bad(format!(
            "gives a leaf weight to a class that is not one of its {n_classes} classes"
        )));
    }
    for (&tree, &node) in leaf_trees.iter().zip(leaf_nodes) {
        let is_leaf = trees
            .get(&tree)
            .and_then(|nodes| usize::try_from(node).ok().and_then(|i| nodes.get(i)))
            .is_some_and(|&(_, children)| children.is_none());
        if !is_leaf {
            return Err(bad(format!(
                "gives a weight to node {node} of tree {tree}, which is not a leaf"
            )));
        }
    }
    Ok(())
}

/// Whether walking down from node 0 can come back to a node on the way.
fn has_cycle(children: &[Option<(usize, usize)>]) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; children.len()];
    // (node, how many of its children were visited)
    let mut path: Vec<(usize, u8)> = vec![(0, 0)];
    mark[0] = Mark::OnPath;
    while let Some(&mut (node, ref mut visited)) = path.last_mut() {
        let next = match (children[node], *visited) {
            (Some((t, _)), 0) => Some(t),
            (Some((_, f)), 1) => Some(f),
            _ => None,
        };
        *visited += 1;
        match next {
            None => {
                mark[node] = Mark::Done;
                path.pop();
            }
            Some(child) => match mark[child] {
                Mark::OnPath => return true,
                Mark::Done => {}
                Mark::New => {
                    mark[child] = Mark::OnPath;
                    path.push((child, 0));
                }
            },
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::has_cycle;

    #[test]
    fn cycles_are_found_and_shared_subtrees_are_not_cycles() {
        assert!(!has_cycle(&[None]));
        assert!(!has_cycle(&[Some((1, 2)), None, None]));
        assert!(!has_cycle(&[Some((1, 2)), Some((2, 2)), None]));
        assert!(has_cycle(&[Some((0, 1)), None]));
        assert!(has_cycle(&[Some((1, 2)), None, Some((1, 0))]));
    }
}
