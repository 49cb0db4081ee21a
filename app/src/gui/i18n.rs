//! Every UI string goes through `t`, with English as the key, so a translation is one table.
//! Chinese (简体中文) is the first; strings without an entry stay English.

use std::cell::Cell;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Lang {
    #[default]
    En,
    Zh,
}

thread_local! {
    // The UI runs on one thread; each test harness has its own.
    static LANG: Cell<Lang> = const { Cell::new(Lang::En) };
}

pub fn set_lang(l: Lang) {
    LANG.with(|c| c.set(l));
}

pub fn lang() -> Lang {
    LANG.with(|c| c.get())
}

/// The current language's text for an English UI string.
pub fn t(s: &'static str) -> &'static str {
    match lang() {
        Lang::En => s,
        Lang::Zh => zh(s).unwrap_or(s),
    }
}

fn zh(s: &str) -> Option<&'static str> {
    Some(match s {
        "Data" => "数据",
        "Label" => "标注",
        "Models" => "模型",
        "Train" => "训练",
        "Runs" => "运行记录",
        "Evaluate" => "评估",
        "File" => "文件",
        "Edit" => "编辑",
        "View" => "视图",
        "Help" => "帮助",
        "Open workspace…" => "打开工作区…",
        "New workspace…" => "新建工作区…",
        "Import dataset…" => "导入数据集…",
        "Undo" => "撤销",
        "Redo" => "重做",
        "Dark theme" => "深色主题",
        "Light theme" => "浅色主题",
        "Keyboard shortcuts" => "键盘快捷键",
        "Search" => "搜索",
        "Accept" => "接受",
        "Reject" => "拒绝",
        "Flag" => "标记",
        "Previous" => "上一条",
        "Next" => "下一条",
        "Prompt" => "提问",
        "Response" => "回答",
        "Start training" => "开始训练",
        "Cancel" => "取消",
        "No workspace open" => "未打开工作区",
        "Rows" => "行",
        "Precision" => "精度",
        "Recompute layers (less memory)" => "逐层重算（省内存）",
        "Gradient checkpointing: keeps about one layer's activations instead of all of them, for about a third more compute." => {
            "梯度检查点：只保留约一层的激活值而非全部，计算量约多三分之一。"
        }
        "f32: full precision. The default on CPU, where bf16 and f16 are rounded in software and so no faster." => {
            "f32：全精度。CPU 上的默认值；在 CPU 上 bf16 和 f16 由软件舍入，并不更快。"
        }
        "bf16 mixed precision: matrix products in bfloat16 over f32 master weights, as torch.autocast does. The choice on GPUs with bf16." => {
            "bf16 混合精度：矩阵乘法用 bfloat16，主权重保持 f32（与 torch.autocast 相同）。支持 bf16 的 GPU 上的首选。"
        }
        "f16 mixed precision with dynamic loss scaling: steps whose gradients overflow are skipped and the scale lowered." => {
            "f16 混合精度，带动态损失缩放：梯度溢出的步会被跳过，并降低缩放系数。"
        }
        "Duplicates" => "重复项",
        "Personal data" => "个人信息",
        "Token lengths" => "词元长度",
        "Split" => "划分",
        "Work area" => "工作区域",
        "Activity" => "活动",
        "Send" => "发送",
        "Stop" => "停止",
        "Records" => "逐条",
        "Pairs" => "成对比较",
        "Both bad" => "都不好",
        "Tie" => "平局",
        "A workspace is a folder that holds your datasets, labels and training runs." => {
            "工作区是一个文件夹，存放你的数据集、标注和训练记录。"
        }
        "Add model" => "添加模型",
        "Add or select a model." => "请添加或选择一个模型。",
        "Add tag" => "添加标签",
        "Add to queue" => "加入队列",
        "Advanced" => "高级设置",
        "Annotator" => "标注人",
        "Apply" => "应用",
        "Batch" => "批次",
        "Browse…" => "浏览…",
        "Clear" => "清空",
        "Click a row to see it here." => "点击一行在此查看。",
        "Column roles" => "列的用途",
        "Count tokens" => "统计词元",
        "Dataset" => "数据集",
        "Datasets" => "数据集",
        "Device" => "设备",
        "Devices" => "计算设备",
        "Device: CPU" => "设备：CPU",
        "GPU memory" => "显存",
        "Discard edit" => "放弃修改",
        "Draft answers with model" => "用模型起草答案",
        "Draft with" => "起草模型",
        "Edited response" => "修改后的回答",
        "Export model" => "导出模型",
        "Export to folder" => "导出到文件夹",
        "Export to" => "导出到",
        "Export" => "导出",
        "File to import" => "要导入的文件",
        "Find duplicates" => "查找重复项",
        "Import" => "导入",
        "Job file" => "任务文件",
        "Keep proportions of" => "保持比例的列",
        "Keep the guesses" => "保留推测",
        "Learning rate" => "学习率",
        "Length" => "长度",
        "Loading…" => "加载中…",
        "Merge LoRA adapter into the model" => "把 LoRA 适配器合并进模型",
        "Message" => "消息",
        "Method" => "方法",
        "Model path" => "模型路径",
        "New tag" => "新标签",
        "No dataset yet: import a file to start." => "还没有数据集：导入一个文件开始。",
        "No duplicates found." => "没有发现重复项。",
        "Note" => "备注",
        "Open a dataset on the Data page first." => "请先在数据页打开一个数据集。",
        "Open or create" => "打开或新建",
        "Playground" => "试用",
        "Provenance (run.json)" => "来源记录 (run.json)",
        "Quit" => "退出",
        "Rating" => "评分",
        "Ready" => "就绪",
        "Refresh queue" => "刷新队列",
        "Refresh" => "刷新",
        "Remove duplicates" => "删除重复项",
        "Replace all with placeholders" => "全部替换为占位符",
        "Reset layout" => "重置布局",
        "Resume from the last checkpoint" => "从最近的检查点继续",
        "Roles…" => "列用途…",
        "Save edit" => "保存修改",
        "Save labels as a new dataset version" => "把标注保存为新的数据集版本",
        "Save note" => "保存备注",
        "Save preferences as a dataset" => "把偏好保存为数据集",
        "Save roles" => "保存列用途",
        "Scan for personal data" => "扫描个人信息",
        "Shape" => "格式",
        "Similarity threshold" => "相似度阈值",
        "Smoothing" => "平滑",
        "Split dataset" => "划分数据集",
        "Start from" => "起点模型",
        "Status" => "状态",
        "Tags" => "标签",
        "Teacher" => "教师模型",
        "Temperature" => "温度",
        "Tokenizer of" => "分词器来自",
        "Train on" => "训练数据",
        "Training loss" => "训练损失",
        "Version" => "版本",
        "Workspace folder" => "工作区文件夹",
        "Rule" => "规则",
        "Reward rule" => "奖励规则",
        "Judge" => "评判模型",
        "Write the text good answers must not contain." => "请填写好的回答不应包含的文字。",
        "The pattern is not a valid regular expression:" => "该模式不是有效的正则表达式：",
        "Choose a model (add one on the Models page)." => "请选择一个模型（可在模型页添加）。",
        "Choose a dataset." => "请选择一个数据集。",
        "PPO needs a finished reward-model run to score answers." => "PPO 需要一个已完成的奖励模型运行来给回答打分。",
        "Distillation needs a teacher model." => "蒸馏需要一个教师模型。",
        "steps · roughly" => "步 · 在 CPU 上约需",
        "on CPU (the run shows the real ETA)" => "（运行时会显示实际剩余时间）",
        "(choose)" => "（请选择）",
        "Base model" => "基础模型",
        "epochs " => "轮数 ",
        "or max steps " => "或最多步数 ",
        "lr" => "学习率",
        "Use the default" => "使用默认值",
        "batch size " => "批大小 ",
        "max tokens " => "最大词元数 ",
        "Adapters" => "适配器",
        "LoRA (train small adapters, base frozen)" => "LoRA（只训练小型适配器，冻结基础模型）",
        "rank " => "秩 ",
        "DPO" => "DPO",
        "beta (how far from the start)" => "beta（离起点多远）",
        "Reward-model run" => "奖励模型运行",
        "Rule text" => "规则文字",
        "answers per prompt " => "每个提问的回答数 ",
        "Teacher model" => "教师模型",
        "Estimated memory:" => "预计内存：",
        "No estimate:" => "无法估算：",
        "Estimating the time…" => "正在估算时间…",
        "warm-up steps " => "预热步数 ",
        "gradient accumulation " => "梯度累积 ",
        "weight decay " => "权重衰减 ",
        "clip gradients at " => "梯度裁剪阈值 ",
        "held out " => "留出比例 ",
        "evaluate every " => "每隔多少步评估 ",
        "checkpoint every " => "每隔多少步保存检查点 ",
        "keep checkpoints " => "保留检查点数 ",
        "seed " => "随机种子 ",
        "LoRA alpha " => "LoRA alpha ",
        "Looking for devices…" => "正在查找设备…",
        "all rows" => "全部行",
        "(none)" => "（无）",
        "Evaluate suite during training" => "训练中评估的套件",
        "every N steps: " => "每 N 步： ",
        "Waiting in the queue:" => "排队等待中：",
        "Remove" => "移除",
        "No job has run in this session yet. Past runs are on the Runs page." => "本次会话还没有运行过任务。以往的运行在运行记录页。",
        "starting…" => "正在启动…",
        "Running on" => "运行设备",
        "Starting the job…" => "正在启动任务…",
        "Device:" => "设备：",
        "waiting" => "个排队中",
        _ => return None,
    })
}
