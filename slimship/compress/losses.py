"""The distillation loss of each task, for distill and for prune's recovery with a teacher.

    classification  alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(labels)
    multilabel      alpha * T^2 * BCE(sigmoid(student / T), sigmoid(teacher / T)) + (1 - alpha) * BCE(labels)
                    (each label is its own yes/no question: soft targets through a sigmoid, not a softmax)
    regression      alpha * MSE(student, teacher) + (1 - alpha) * MSE(student, labels)
                    (the teacher's score is the soft target; a temperature has no meaning for one number)
"""

from __future__ import annotations

from slimship.core.tasks import CLASSIFICATION, MULTILABEL, REGRESSION


def kd_loss(task: str, student_logits, teacher_logits, labels, temperature: float, alpha: float):
    import torch.nn.functional as F

    s, t = student_logits.float(), teacher_logits.float()
    if task == CLASSIFICATION:
        soft = F.kl_div(F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1),
                        log_target=True, reduction="batchmean") * temperature ** 2
        hard = F.cross_entropy(s, labels)
    elif task == MULTILABEL:
        soft = F.binary_cross_entropy_with_logits(s / temperature, (t / temperature).sigmoid()) * temperature ** 2
        hard = F.binary_cross_entropy_with_logits(s, labels.float())
    elif task == REGRESSION:
        soft = F.mse_loss(s.reshape(-1), t.reshape(-1))
        hard = F.mse_loss(s.reshape(-1), labels.float().reshape(-1))
    else:
        raise ValueError(f"unknown task {task!r}")
    return alpha * soft + (1.0 - alpha) * hard
